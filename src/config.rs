//! The configuration file, in two steps: `RawConfig` is exactly what the JSON says, `Config` is
//! the validated form with parsed addresses and durations. Nothing outside this module sees the
//! raw form. The prototype's file `{"ports": [...], "sleeping": 1}` stays valid as it is.

use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    ports: Vec<String>,
    #[serde(default = "defaults::sleeping")]
    sleeping: f64,
    #[serde(default = "defaults::listen")]
    listen: String,
    #[serde(default = "defaults::connect_timeout")]
    connect_timeout: f64,
    #[serde(default = "defaults::client_header_timeout")]
    client_header_timeout: f64,
    #[serde(default = "defaults::keepalive_timeout")]
    keepalive_timeout: f64,
    #[serde(default = "defaults::upstream_timeout")]
    upstream_timeout: f64,
    #[serde(default = "defaults::probe_timeout")]
    probe_timeout: f64,
    #[serde(default = "defaults::shutdown_timeout")]
    shutdown_timeout: f64,
    #[serde(default = "defaults::probe_path")]
    probe_path: String,
    #[serde(default = "defaults::all_down_status")]
    all_down_status: u16,
    #[serde(default = "defaults::max_request_head")]
    max_request_head: usize,
    #[serde(default = "defaults::max_idle_upstream")]
    max_idle_upstream: usize,
    #[serde(default = "defaults::one")]
    fall: u32,
    #[serde(default = "defaults::one")]
    rise: u32,
    #[serde(default)]
    check_live: bool,
    /// Defaults to the number of targets.
    retries: Option<usize>,
    #[serde(default = "defaults::retry_timeout")]
    retry_timeout: f64,
    #[serde(default = "defaults::all_down")]
    all_down: String,
    #[serde(default = "defaults::access_log")]
    access_log: String,
    #[serde(default = "defaults::client_body_timeout")]
    client_body_timeout: f64,
    /// 0: no limit.
    #[serde(default)]
    max_body_size: u64,
    #[serde(default = "defaults::max_connections")]
    max_connections: usize,
}

mod defaults {
    pub fn sleeping() -> f64 {
        1.0
    }
    pub fn listen() -> String {
        "0.0.0.0:8000".to_owned()
    }
    pub fn connect_timeout() -> f64 {
        2.0
    }
    pub fn client_header_timeout() -> f64 {
        10.0
    }
    pub fn keepalive_timeout() -> f64 {
        60.0
    }
    pub fn upstream_timeout() -> f64 {
        30.0
    }
    pub fn probe_timeout() -> f64 {
        1.0
    }
    pub fn shutdown_timeout() -> f64 {
        5.0
    }
    pub fn probe_path() -> String {
        "/ping/".to_owned()
    }
    pub fn all_down_status() -> u16 {
        500
    }
    pub fn max_request_head() -> usize {
        16 * 1024
    }
    pub fn max_idle_upstream() -> usize {
        64
    }
    pub fn one() -> u32 {
        1
    }
    pub fn retry_timeout() -> f64 {
        30.0
    }
    pub fn all_down() -> String {
        "error".to_owned()
    }
    pub fn access_log() -> String {
        "off".to_owned()
    }
    pub fn client_body_timeout() -> f64 {
        10.0
    }
    pub fn max_connections() -> usize {
        10_000
    }
}

/// What to do when no target is live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllDown {
    /// Answer `all_down_status` with `All servers is off` (the prototype's behaviour).
    Error,
    /// Fail open: try every target, live or not, before answering the error.
    TryAll,
}

/// Where the access log goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Stdout,
    File(std::path::PathBuf),
}

/// Most targets a proxy accepts; a request's tried-set is a fixed bitset of this many bits.
pub const MAX_TARGETS: usize = 256;

/// One upstream as the config names it.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetSpec {
    /// The URL exactly as written, for log lines.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// Prepended to every request path; empty for `/`.
    pub path_prefix: String,
}

impl TargetSpec {
    /// The address when the host is an IP literal, so no lookup is needed.
    pub fn literal_addr(&self) -> Option<SocketAddr> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        host.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, self.port))
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub targets: Vec<TargetSpec>,
    pub sleeping: Duration,
    pub listen: SocketAddr,
    pub connect_timeout: Duration,
    pub client_header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub upstream_timeout: Duration,
    pub probe_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub probe_path: String,
    pub all_down_status: u16,
    pub max_request_head: usize,
    pub max_idle_upstream: usize,
    /// Consecutive failures that take a target out of the rotation.
    pub fall: u32,
    /// Consecutive successful probes that bring a target back.
    pub rise: u32,
    /// Probe live targets too, not only dropped ones.
    pub check_live: bool,
    /// Most retries of one request.
    pub retries: usize,
    /// No retry starts later than this after the request arrived.
    pub retry_timeout: Duration,
    pub all_down: AllDown,
    pub access_log: AccessLog,
    /// Longest pause in a request body before 408.
    pub client_body_timeout: Duration,
    /// Largest request body accepted (413 beyond); `None`: no limit.
    pub max_body_size: Option<u64>,
    /// Client connections beyond this are answered 503 and closed at once.
    pub max_connections: usize,
}

/// Why a config was refused: the key at fault and what is wrong with it.
#[derive(Debug, PartialEq)]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.problem)
        } else {
            write!(f, "key `{}`: {}", self.key, self.problem)
        }
    }
}

fn err(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_owned(), problem: problem.into() }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| err("", format!("cannot read {}: {e}", path.display())))?;
        Config::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| err("", e.to_string()))?;
        raw.validate()
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        if self.ports.is_empty() {
            return Err(err("ports", "the target list is empty"));
        }
        if self.ports.len() > MAX_TARGETS {
            return Err(err("ports", format!("at most {MAX_TARGETS} targets are supported")));
        }
        let targets = self
            .ports
            .iter()
            .map(|url| parse_target_url(url).map_err(|p| err("ports", format!("{url:?}: {p}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if !(100..=599).contains(&self.all_down_status) {
            return Err(err("all_down_status", "must be an HTTP status from 100 to 599"));
        }
        if !self.probe_path.starts_with('/') || self.probe_path.bytes().any(|b| b <= b' ') {
            return Err(err("probe_path", "must be a path starting with / and without spaces"));
        }
        if !(1024..=1024 * 1024).contains(&self.max_request_head) {
            return Err(err("max_request_head", "must be between 1024 and 1048576 bytes"));
        }
        if self.fall == 0 || self.rise == 0 {
            return Err(err(if self.fall == 0 { "fall" } else { "rise" }, "must be at least 1"));
        }
        let all_down = match self.all_down.as_str() {
            "error" => AllDown::Error,
            "try_all" => AllDown::TryAll,
            other => return Err(err("all_down", format!("must be \"error\" or \"try_all\", got {other:?}"))),
        };
        let access_log = match self.access_log.as_str() {
            "off" | "" => AccessLog::Off,
            "stdout" => AccessLog::Stdout,
            path => AccessLog::File(path.into()),
        };
        let prefix = &targets[0].path_prefix;
        if let Some(t) = targets.iter().find(|t| &t.path_prefix != prefix) {
            return Err(err("ports", format!("{:?}: every target must have the same path as the first", t.url)));
        }
        Ok(Config {
            retries: self.retries.unwrap_or(targets.len()),
            targets,
            sleeping: seconds("sleeping", self.sleeping)?,
            listen: parse_listen(&self.listen)
                .ok_or_else(|| err("listen", format!("{:?} is not an address like 0.0.0.0:8000", self.listen)))?,
            connect_timeout: seconds("connect_timeout", self.connect_timeout)?,
            client_header_timeout: seconds("client_header_timeout", self.client_header_timeout)?,
            keepalive_timeout: seconds("keepalive_timeout", self.keepalive_timeout)?,
            upstream_timeout: seconds("upstream_timeout", self.upstream_timeout)?,
            probe_timeout: seconds("probe_timeout", self.probe_timeout)?,
            shutdown_timeout: seconds("shutdown_timeout", self.shutdown_timeout)?,
            probe_path: self.probe_path,
            all_down_status: self.all_down_status,
            max_request_head: self.max_request_head,
            max_idle_upstream: self.max_idle_upstream,
            fall: self.fall,
            rise: self.rise,
            check_live: self.check_live,
            retry_timeout: seconds("retry_timeout", self.retry_timeout)?,
            all_down,
            access_log,
            client_body_timeout: seconds("client_body_timeout", self.client_body_timeout)?,
            max_body_size: (self.max_body_size > 0).then_some(self.max_body_size),
            max_connections: self.max_connections.max(1),
        })
    }
}

fn seconds(key: &str, value: f64) -> Result<Duration, ConfigError> {
    if !(value.is_finite() && value > 0.0 && value <= 86_400.0) {
        return Err(err(key, format!("must be a positive number of seconds, got {value}")));
    }
    Ok(Duration::from_secs_f64(value))
}

/// `0.0.0.0:8000`, `[::]:8000`, or `:8000` for every IPv4 interface.
fn parse_listen(text: &str) -> Option<SocketAddr> {
    match text.strip_prefix(':') {
        Some(port) => port.parse::<u16>().ok().map(|p| SocketAddr::from(([0, 0, 0, 0], p))),
        None => text.parse().ok(),
    }
}

/// Parses `http://host[:port][/path]`.
pub fn parse_target_url(url: &str) -> Result<TargetSpec, &'static str> {
    let rest = url.strip_prefix("http://").ok_or("must start with http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if path.bytes().any(|b| b <= b' ' || b == b'?' || b == b'#' || b >= 0x7f) {
        return Err("the path may not hold spaces, a query or a fragment");
    }
    let (host, port) = split_host_port(authority)?;
    Ok(TargetSpec {
        url: url.to_owned(),
        host: host.to_owned(),
        port,
        path_prefix: path.trim_end_matches('/').to_owned(),
    })
}

fn split_host_port(authority: &str) -> Result<(&str, u16), &'static str> {
    let (host, port) = if authority.starts_with('[') {
        let close = authority.find(']').ok_or("unclosed [ in an IPv6 host")?;
        let (host, rest) = authority.split_at(close + 1);
        if host[1..close].parse::<std::net::Ipv6Addr>().is_err() {
            return Err("not a valid IPv6 address");
        }
        (host, rest.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let valid_name =
        |h: &str| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !host.starts_with('[') && !valid_name(host) {
        return Err("the host is missing or holds characters a host name cannot");
    }
    let port = match port {
        None => 80,
        Some(p) => p.parse::<u16>().ok().filter(|&p| p > 0).ok_or("the port is not 1-65535")?,
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prototype_file_parses_with_defaults() {
        let c =
            Config::parse(r#"{"ports": ["http://127.0.0.1:9001/", "http://t2:80/"], "sleeping": 1}"#).expect("valid");
        assert_eq!(c.targets.len(), 2);
        assert_eq!(c.sleeping, Duration::from_secs(1));
        assert_eq!(c.listen, "0.0.0.0:8000".parse().expect("addr"));
        assert_eq!(c.probe_path, "/ping/");
        assert_eq!(c.all_down_status, 500);
        assert_eq!(c.targets[0].literal_addr(), Some("127.0.0.1:9001".parse().expect("addr")));
        assert_eq!(c.targets[1].literal_addr(), None);
        assert_eq!((c.fall, c.rise, c.retries, c.all_down), (1, 1, 2, AllDown::Error));
        assert_eq!(c.access_log, AccessLog::Off);
    }

    #[test]
    fn target_urls() {
        let t = parse_target_url("http://svc-3/api/").expect("valid");
        assert_eq!((t.host.as_str(), t.port, t.path_prefix.as_str()), ("svc-3", 80, "/api"));
        let t = parse_target_url("http://[::1]:81").expect("valid");
        assert_eq!((t.host.as_str(), t.port, t.path_prefix.as_str()), ("[::1]", 81, ""));
        assert_eq!(t.literal_addr(), Some("[::1]:81".parse().expect("addr")));
        for bad in ["https://a/", "http://", "http://a:0/", "http://a:70000/", "http://a b/", "a:80", "http://a/?x"] {
            assert!(parse_target_url(bad).is_err(), "{bad} should be refused");
        }
    }

    fn refused(text: &str) -> String {
        match Config::parse(text) {
            Ok(_) => panic!("{text} should be refused"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_configs_name_the_key() {
        assert!(refused(r#"{"ports": []}"#).contains("`ports`"));
        assert!(refused(r#"{"ports": ["ftp://a/"]}"#).contains("`ports`"));
        assert!(refused(r#"{"ports": ["http://a/"], "sleeping": 0}"#).contains("`sleeping`"));
        assert!(refused(r#"{"ports": ["http://a/"], "sleeping": -2}"#).contains("`sleeping`"));
        assert!(refused(r#"{"ports": ["http://a/"], "colour": 1}"#).contains("colour"));
        assert!(refused(r#"{"ports": ["http://a/"], "listen": "nowhere"}"#).contains("`listen`"));
        assert!(refused(r#"{"sleeping": 1}"#).contains("ports"));
        assert!(refused(r#"{"ports": ["http://a/"], "fall": 0}"#).contains("`fall`"));
        assert!(refused(r#"{"ports": ["http://a/"], "all_down": "panic"}"#).contains("`all_down`"));
        assert!(refused(r#"{"ports": ["http://a/x", "http://b/y"]}"#).contains("same path"));
    }

    #[test]
    fn listen_shorthand() {
        assert_eq!(parse_listen(":8080"), Some("0.0.0.0:8080".parse().expect("addr")));
        assert_eq!(parse_listen("127.0.0.1:0"), Some("127.0.0.1:0".parse().expect("addr")));
        assert_eq!(parse_listen("8080"), None);
    }
}
