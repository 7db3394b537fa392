//! The configuration file, in two steps: `RawConfig` is exactly what the JSON says, `Config` is
//! the validated form with parsed addresses and durations. Nothing outside this module sees the
//! raw form. The prototype's file `{"ports": [...], "sleeping": 1}` stays valid as it is.

mod print;
mod raw;

use crate::http::{self, ChunkLimits};
use raw::{did_you_mean, Keys, RawConfig};
use serde_json::Value;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

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
pub enum LogDestination {
    Off,
    Stdout,
    File(std::path::PathBuf),
}

/// How each access-log line is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Common log format with the failover trace appended (`key=value` fields).
    Common,
    /// One JSON object per line, as Caddy and Traefik write.
    Json,
}

/// Which target a request goes to (`balance/` has one file per policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// The prototype's rule: `live[seq % live.len()]`.
    HashRing,
    /// Smooth weighted round robin, as nginx does.
    RoundRobin,
    /// Fewest requests in flight, relative to weight; ties broken by rotation.
    LeastConn,
    /// Power of two random choices on requests in flight (Envoy's LEAST_REQUEST).
    P2c,
    /// Consistent hashing on `hash_key`.
    Hash,
}

/// What the `hash` policy hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    /// A request header's value, by lower-case name.
    Header(String),
    Cookie(String),
    Path,
}

/// The TLS listener: where, and the certificates it serves.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsSpec {
    pub listen: SocketAddr,
    /// The default certificate chain and its key (PEM files).
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// More certificates, each chosen when the client's SNI matches one of its names.
    pub sni: Vec<SniSpec>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SniSpec {
    /// Host names, lower case; `*.example.com` matches one label in front of `example.com`.
    pub names: Vec<String>,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// Every top-level key of the file, in the order the parser takes them: the parser's own list,
/// which the reference (`docs/configuration.md`) and the schema (`docs/ringproxy.schema.json`)
/// are tested against.
pub fn keys() -> Vec<&'static str> {
    raw::known()
}

/// The keys of a target object in `ports`.
pub const TARGET_KEYS: [&str; 3] = ["url", "weight", "discover"];
/// The keys of `tls`, and of each of its `sni` entries.
pub const TLS_KEYS: [&str; 4] = ["listen", "cert", "key", "sni"];
pub const SNI_KEYS: [&str; 3] = ["names", "cert", "key"];

/// Where the admin endpoints listen when the config does not say.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9000";

pub use crate::ids::MAX_TARGETS;

/// One upstream as the config names it.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetSpec {
    /// The URL exactly as written, for log lines.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// Prepended to every request path; empty for `/`.
    pub path_prefix: String,
    /// Its share relative to the others, for the policies that weigh (1 to 1000).
    pub weight: u32,
    /// The host is a name that stands for every address it resolves to, each its own target.
    pub discover: bool,
}

impl TargetSpec {
    /// The host without the brackets of an IPv6 literal: what a lookup or a parse takes.
    pub fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The address when the host is an IP literal, so no lookup is needed.
    pub fn literal_addr(&self) -> Option<SocketAddr> {
        self.bare_host().parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, self.port))
    }
}

/// The validated configuration, grouped by what each part of the proxy reads.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub targets: Vec<TargetSpec>,
    pub timeouts: Timeouts,
    pub health: HealthCheck,
    pub balancing: Balancing,
    pub limits: Limits,
    pub logging: Logging,
    pub admin: AdminSpec,
    /// Protocols a client may switch to through the proxy (`Upgrade`), lower case.
    pub upgrade_protocols: Vec<String>,
    pub tls: Option<TlsSpec>,
    /// Event loops, each on its own thread with its own listener (`SO_REUSEPORT`).
    pub workers: usize,
    /// Values the file asked for that were raised to their floor, one line each, for the log.
    pub warnings: Vec<String>,
}

/// How long each wait may last (the `*_timeout` keys).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    /// A whole request head, from the connection's start; also the TLS handshake's limit.
    pub client_header: Duration,
    /// An idle client connection between requests.
    pub keepalive: Duration,
    /// A response head, and the silence limit while a body streams.
    pub upstream: Duration,
    /// The longest pause in a request body before 408.
    pub client_body: Duration,
    /// The longest silence, both ways, on a tunnel (a WebSocket after its `101`).
    pub tunnel: Duration,
    /// What requests in flight get after SIGTERM.
    pub shutdown: Duration,
    /// No retry starts later than this after the request arrived.
    pub retry: Duration,
}

/// What the proxy looks at to judge its targets, and how often.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheck {
    /// Between probes of a dropped target.
    pub sleeping: Duration,
    pub probe_timeout: Duration,
    pub probe_path: String,
    /// Consecutive failures that take a target out of the rotation.
    pub fall: u32,
    /// Consecutive successful probes that bring a target back.
    pub rise: u32,
    /// Probe live targets too, not only dropped ones.
    pub check_live: bool,
    /// How often names of `discover` targets are looked up again.
    pub resolve_interval: Duration,
}

/// Which target a request goes to, and what happens when none can take it.
#[derive(Clone, Debug, PartialEq)]
pub struct Balancing {
    pub policy: Policy,
    pub hash_key: HashKey,
    /// How long a target that comes back takes to ramp up to its full weight; zero: at once.
    pub slow_start: Duration,
    /// Most retries of one request; `None`: as many as there are targets in the table (which
    /// discovery and reloads change).
    pub retries: Option<usize>,
    pub all_down: AllDown,
    pub all_down_status: u16,
}

/// Sizes and counts the proxy holds to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Client connections beyond this are answered 503 and closed at once.
    pub max_connections: usize,
    pub max_request_head: usize,
    /// Largest request body accepted (413 beyond); `None`: no limit.
    pub max_body_size: Option<u64>,
    pub max_idle_upstream: usize,
    /// Longest chunk-size line (with extensions) and trailer section of a chunked body.
    pub chunk_limits: ChunkLimits,
}

/// The access log.
#[derive(Clone, Debug, PartialEq)]
pub struct Logging {
    pub access_log: LogDestination,
    pub access_log_format: LogFormat,
}

/// The admin listener (metrics, status, health endpoints).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdminSpec {
    /// `None`: off.
    pub addr: Option<SocketAddr>,
    /// The file named the address: failing to listen there is fatal. The default address is
    /// taken only if free, so that a port already in use on the host never stops the proxy.
    pub named: bool,
    /// Admin connections beyond this make room by closing one.
    pub max_connections: usize,
}

/// The most event loops: one per core on any machine this runs on, and the peers' mailboxes
/// stay small.
pub const MAX_WORKERS: usize = 64;

/// The shortest period between probes of one target: shorter spins the probe loop.
pub const SLEEPING_FLOOR: f64 = 0.1;
/// The shortest timeout: shorter is a timer that fires before any network round trip.
pub const TIMEOUT_FLOOR: f64 = 0.01;

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
    /// Prepended to every request path: the targets' common URL path (`""` for `/`).
    pub fn path_prefix(&self) -> &str {
        self.targets.first().map_or("", |t| t.path_prefix.as_str())
    }

    /// Reads, parses and validates a config file, and checks the files it names.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| err("", format!("cannot read {}: {e}", path.display())))?;
        let config = Config::parse(&text)?;
        config.check_files()?;
        Ok(config)
    }

    /// The access log's directory must exist: a typo there is a config error naming the key,
    /// not a failure to start.
    fn check_files(&self) -> Result<(), ConfigError> {
        let LogDestination::File(path) = &self.logging.access_log else {
            return Ok(());
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(err("access_log", format!("directory {} does not exist", dir.display())));
        }
        if path.is_dir() {
            return Err(err("access_log", format!("{} is a directory", path.display())));
        }
        Ok(())
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        // Editors on Windows save JSON with a byte-order mark; it is no part of the document.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut value: Value = serde_json::from_str(text).map_err(|e| err("", e.to_string()))?;
        whole_numbers(&mut value);
        let Value::Object(keys) = value else {
            return Err(err("", "the config must be a JSON object, like {\"ports\": [...]}"));
        };
        RawConfig::from_keys(Keys::new(keys))?.validate()
    }
}

impl RawConfig {
    /// The validated config, group by group; every error names its key. A value below its
    /// floor is raised, with a line in `warnings`.
    fn validate(self) -> Result<Config, ConfigError> {
        let mut warnings = Vec::new();
        let listen = parse_listen(&self.listen).ok_or_else(|| {
            err("listen", format!("{:?} is not an address like 0.0.0.0:8000, :8000 or localhost:8000", self.listen))
        })?;
        Ok(Config {
            listen,
            targets: self.targets()?,
            timeouts: self.timeouts(&mut warnings)?,
            health: self.health(&mut warnings)?,
            balancing: self.balancing(&mut warnings)?,
            limits: self.limits()?,
            logging: self.logging()?,
            admin: self.admin()?,
            upgrade_protocols: self.upgrade_protocols()?,
            tls: self.tls.as_ref().map(parse_tls).transpose()?,
            workers: parse_workers(&self.workers)?,
            warnings,
        })
    }

    /// `ports`: at least one target, at most `MAX_TARGETS`, no two the same, one common path.
    fn targets(&self) -> Result<Vec<TargetSpec>, ConfigError> {
        if self.ports.is_empty() {
            return Err(err("ports", "the target list is empty"));
        }
        if self.ports.len() > MAX_TARGETS {
            return Err(err("ports", format!("at most {MAX_TARGETS} targets are supported")));
        }
        let parsed =
            self.ports.iter().enumerate().map(|(i, entry)| {
                parse_port(entry).map_err(|e| err("ports", format!("entry {}: {}", i + 1, e.problem)))
            });
        let targets = parsed.collect::<Result<Vec<_>, _>>()?;
        let prefix = &targets[0].path_prefix;
        if let Some(t) = targets.iter().find(|t| &t.path_prefix != prefix) {
            return Err(err("ports", format!("{:?}: every target must have the same path as the first", t.url)));
        }
        for (i, t) in targets.iter().enumerate() {
            let same = |u: &TargetSpec| u.port == t.port && u.host.eq_ignore_ascii_case(&t.host);
            if let Some(first) = targets[..i].iter().find(|u| same(u)) {
                return Err(err("ports", format!("{:?} and {:?} are the same target", first.url, t.url)));
            }
        }
        Ok(targets)
    }

    fn timeouts(&self, warnings: &mut Vec<String>) -> Result<Timeouts, ConfigError> {
        let mut secs = |key: &str, value: f64| seconds(key, value, TIMEOUT_FLOOR, warnings);
        Ok(Timeouts {
            connect: secs("connect_timeout", self.connect_timeout)?,
            client_header: secs("client_header_timeout", self.client_header_timeout)?,
            keepalive: secs("keepalive_timeout", self.keepalive_timeout)?,
            upstream: secs("upstream_timeout", self.upstream_timeout)?,
            client_body: secs("client_body_timeout", self.client_body_timeout)?,
            tunnel: secs("tunnel_timeout", self.tunnel_timeout)?,
            shutdown: secs("shutdown_timeout", self.shutdown_timeout)?,
            retry: secs("retry_timeout", self.retry_timeout)?,
        })
    }

    fn health(&self, warnings: &mut Vec<String>) -> Result<HealthCheck, ConfigError> {
        if !self.probe_path.starts_with('/') || self.probe_path.bytes().any(|b| b <= b' ') {
            return Err(err("probe_path", "must be a path starting with / and without spaces"));
        }
        if self.fall == 0 || self.rise == 0 {
            return Err(err(if self.fall == 0 { "fall" } else { "rise" }, "must be at least 1"));
        }
        Ok(HealthCheck {
            sleeping: seconds("sleeping", self.sleeping, SLEEPING_FLOOR, warnings)?,
            probe_timeout: seconds("probe_timeout", self.probe_timeout, TIMEOUT_FLOOR, warnings)?,
            probe_path: self.probe_path.clone(),
            fall: self.fall,
            rise: self.rise,
            check_live: self.check_live,
            resolve_interval: seconds("resolve_interval", self.resolve_interval, SLEEPING_FLOOR, warnings)?,
        })
    }

    fn balancing(&self, warnings: &mut Vec<String>) -> Result<Balancing, ConfigError> {
        let policy = match self.policy.as_str() {
            "hashring" => Policy::HashRing,
            "round_robin" => Policy::RoundRobin,
            "least_conn" => Policy::LeastConn,
            "p2c" => Policy::P2c,
            "hash" => Policy::Hash,
            other => {
                let known = "\"hashring\", \"round_robin\", \"least_conn\", \"p2c\" or \"hash\"";
                let hint = did_you_mean(other, &["hashring", "round_robin", "least_conn", "p2c", "hash"]);
                return Err(err("policy", format!("must be {known}, got {other:?}{hint}")));
            }
        };
        let all_down = match self.all_down.as_str() {
            "error" => AllDown::Error,
            "try_all" => AllDown::TryAll,
            other => {
                let hint = did_you_mean(other, &["error", "try_all"]);
                return Err(err("all_down", format!("must be \"error\" or \"try_all\", got {other:?}{hint}")));
            }
        };
        if !(100..=599).contains(&self.all_down_status) {
            return Err(err("all_down_status", "must be an HTTP status from 100 to 599"));
        }
        let slow_start = match self.slow_start {
            0.0 => Duration::ZERO,
            value => seconds("slow_start", value, TIMEOUT_FLOOR, warnings)?,
        };
        Ok(Balancing {
            policy,
            hash_key: parse_hash_key(&self.hash_key)?,
            slow_start,
            retries: self.retries,
            all_down,
            all_down_status: self.all_down_status,
        })
    }

    fn limits(&self) -> Result<Limits, ConfigError> {
        if !(1024..=1024 * 1024).contains(&self.max_request_head) {
            return Err(err("max_request_head", "must be between 1024 and 1048576 bytes"));
        }
        if self.max_connections == 0 {
            return Err(err("max_connections", "must be at least 1"));
        }
        Ok(Limits {
            max_connections: self.max_connections,
            max_request_head: self.max_request_head,
            max_body_size: (self.max_body_size > 0).then_some(self.max_body_size),
            max_idle_upstream: self.max_idle_upstream,
            chunk_limits: self.chunk_limits()?,
        })
    }

    fn logging(&self) -> Result<Logging, ConfigError> {
        let access_log = match self.access_log.as_str() {
            "off" | "" => LogDestination::Off,
            "stdout" => LogDestination::Stdout,
            path => LogDestination::File(path.into()),
        };
        let access_log_format = match self.access_log_format.as_str() {
            "common" | "clf" => LogFormat::Common,
            "json" => LogFormat::Json,
            other => {
                let hint = did_you_mean(other, &["common", "clf", "json"]);
                return Err(err(
                    "access_log_format",
                    format!("must be \"common\", \"clf\" or \"json\", got {other:?}{hint}"),
                ));
            }
        };
        Ok(Logging { access_log, access_log_format })
    }

    fn admin(&self) -> Result<AdminSpec, ConfigError> {
        let addr = match &self.admin {
            None => parse_listen(DEFAULT_ADMIN),
            Some(None) => None,
            Some(Some(text)) => Some(
                parse_listen(text)
                    .ok_or_else(|| err("admin", format!("{text:?} is not an address like 127.0.0.1:9000, or null")))?,
            ),
        };
        if self.admin_max_connections == 0 {
            return Err(err("admin_max_connections", "must be at least 1"));
        }
        Ok(AdminSpec { addr, named: self.admin.is_some(), max_connections: self.admin_max_connections })
    }

    /// Protocol names (tokens), lower case; never h2c, which the proxy cannot tunnel.
    fn upgrade_protocols(&self) -> Result<Vec<String>, ConfigError> {
        if let Some(bad) = self.upgrade_protocols.iter().find(|p| !http::is_token(p)) {
            return Err(err("upgrade_protocols", format!("{bad:?} is not a protocol name like \"websocket\"")));
        }
        if let Some(h2c) = self.upgrade_protocols.iter().find(|p| p.eq_ignore_ascii_case("h2c")) {
            return Err(err(
                "upgrade_protocols",
                format!("{h2c:?}: the proxy speaks HTTP/1.1 to targets and cannot tunnel h2c"),
            ));
        }
        Ok(self.upgrade_protocols.iter().map(|p| p.to_ascii_lowercase()).collect())
    }

    /// The chunk limits must fit a connection buffer, with room to spare, since the bytes they
    /// bound are held there until checked.
    fn chunk_limits(&self) -> Result<ChunkLimits, ConfigError> {
        let head = u32::try_from(self.max_request_head).unwrap_or(u32::MAX);
        let line = self.max_chunk_line.unwrap_or(4096.min(head / 4));
        let trailers = self.max_trailer_size.unwrap_or(8192.min(head / 2));
        if line < 64 {
            return Err(err("max_chunk_line", "must be at least 64 bytes"));
        }
        if u64::from(line) + u64::from(trailers) > u64::from(head) {
            let key = if self.max_trailer_size.is_some() { "max_trailer_size" } else { "max_chunk_line" };
            return Err(err(key, "max_chunk_line + max_trailer_size must not exceed max_request_head"));
        }
        Ok(ChunkLimits { line, trailers })
    }
}

/// Numbers written with a point that are whole (`2.0`, `1e3`) become integers, as JSON and the
/// schema take them: a count or a size written so is that count.
fn whole_numbers(value: &mut Value) {
    match value {
        Value::Number(n) if !n.is_u64() && !n.is_i64() => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 9.0e15) {
                *value = Value::from(f as u64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers),
        Value::Object(map) => map.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

/// A duration in seconds: positive, at most a day, and raised to `floor` (with a warning) when
/// below it.
fn seconds(key: &str, value: f64, floor: f64, warnings: &mut Vec<String>) -> Result<Duration, ConfigError> {
    if !(value.is_finite() && value > 0.0) {
        return Err(err(key, format!("must be a positive number of seconds, got {value}")));
    }
    if value > 86_400.0 {
        return Err(err(key, format!("must be at most 86400 seconds (a day), got {value}")));
    }
    if value < floor {
        warnings.push(format!("`{key}`: {value} s is below the floor of {floor} s; using {floor} s"));
        return Ok(Duration::from_secs_f64(floor));
    }
    Ok(Duration::from_secs_f64(value))
}

/// `0.0.0.0:8000`, `[::]:8000`, `:8000` for every IPv4 interface, or `localhost:8000` for the
/// IPv4 loopback. Other names are refused: an address to bind is not looked up.
fn parse_listen(text: &str) -> Option<SocketAddr> {
    let port = |p: &str| p.parse::<u16>().ok();
    if let Some(p) = text.strip_prefix(':') {
        return port(p).map(|p| SocketAddr::from(([0, 0, 0, 0], p)));
    }
    if let Some((_, p)) = text.rsplit_once(':').filter(|(h, _)| h.eq_ignore_ascii_case("localhost")) {
        return port(p).map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
    }
    text.parse().ok()
}

/// One entry of `ports`: a URL, or `{"url": ..., "weight": N, "discover": bool}`.
fn parse_port(entry: &Value) -> Result<TargetSpec, ConfigError> {
    let bad = |what: &str| err("ports", what.to_owned());
    let (url, weight, discover) = match entry {
        Value::String(url) => (url.as_str(), 1, false),
        Value::Object(keys) => {
            if let Some(unknown) = keys.keys().find(|k| !TARGET_KEYS.contains(&k.as_str())) {
                let hint = did_you_mean(unknown, &TARGET_KEYS);
                return Err(bad(&format!("unknown field `{unknown}`{hint} in a target (url, weight, discover)")));
            }
            let url = keys.get("url").and_then(Value::as_str).ok_or_else(|| bad("a target object needs \"url\""))?;
            let weight = match keys.get("weight") {
                None => 1,
                Some(w) => w.as_u64().filter(|w| (1..=1000).contains(w)).ok_or_else(|| {
                    bad(&format!("{url:?}: \"weight\" must be a whole number from 1 to 1000, got {w}"))
                })? as u32,
            };
            let discover = match keys.get("discover") {
                None => false,
                Some(d) => d.as_bool().ok_or_else(|| bad(&format!("{url:?}: \"discover\" must be true or false")))?,
            };
            (url, weight, discover)
        }
        other => return Err(bad(&format!("each target is a URL string or an object, got {other}"))),
    };
    let mut spec = parse_target_url(url).map_err(|p| err("ports", format!("{url:?}: {p}")))?;
    if discover && spec.literal_addr().is_some() {
        return Err(err("ports", format!("{url:?}: \"discover\" needs a host name, not an address")));
    }
    (spec.weight, spec.discover) = (weight, discover);
    Ok(spec)
}

/// `{"listen": ADDR, "cert": PEM, "key": PEM, "sni": [{"names": [...], "cert", "key"}]}`. The
/// files are read and checked by `tls::load`, for `--check`, at start and on reload.
fn parse_tls(value: &Value) -> Result<TlsSpec, ConfigError> {
    let Value::Object(keys) = value else {
        return Err(err(
            "tls",
            "must be an object like {\"listen\": \":8443\", \"cert\": \"chain.pem\", \"key\": \"key.pem\"}",
        ));
    };
    if let Some(unknown) = keys.keys().find(|k| !TLS_KEYS.contains(&k.as_str())) {
        let hint = did_you_mean(unknown, &TLS_KEYS);
        return Err(err("tls", format!("unknown field `{unknown}`{hint} (listen, cert, key, sni)")));
    }
    let text = |key: &str, v: Option<&Value>| -> Result<String, ConfigError> {
        match v.and_then(Value::as_str) {
            Some("") => Err(err(&format!("tls.{key}"), "is empty: it names a PEM file, or an address for listen")),
            Some(s) => Ok(s.to_owned()),
            None => Err(err(&format!("tls.{key}"), "must be a string")),
        }
    };
    let listen = text("listen", keys.get("listen").or(Some(&Value::String(":8443".into()))))?;
    let listen = parse_listen(&listen)
        .ok_or_else(|| err("tls.listen", format!("{listen:?} is not an address like 0.0.0.0:8443")))?;
    let mut sni = Vec::new();
    for (i, entry) in keys.get("sni").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let key = format!("tls.sni[{i}]");
        let unknown = entry.as_object().and_then(|e| e.keys().find(|k| !SNI_KEYS.contains(&k.as_str())));
        if let Some(unknown) = unknown {
            let hint = did_you_mean(unknown, &SNI_KEYS);
            return Err(err(&key, format!("unknown field `{unknown}`{hint} (names, cert, key)")));
        }
        let names: Vec<String> = entry
            .get("names")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).map(str::to_ascii_lowercase).collect())
            .filter(|names: &Vec<String>| !names.is_empty())
            .ok_or_else(|| err(&key, "needs \"names\": a list of host names"))?;
        let file = |k: &str| {
            entry.get(k).and_then(Value::as_str).map(Into::into).ok_or_else(|| err(&key, format!("needs \"{k}\"")))
        };
        sni.push(SniSpec { names, cert: file("cert")?, key: file("key")? });
    }
    Ok(TlsSpec { listen, cert: text("cert", keys.get("cert"))?.into(), key: text("key", keys.get("key"))?.into(), sni })
}

/// `workers`: a count from 1 to `MAX_WORKERS`, or `"auto"`: the cores this process may run on.
fn parse_workers(value: &serde_json::Value) -> Result<usize, ConfigError> {
    let bad = || err("workers", format!("must be a number from 1 to {MAX_WORKERS} or \"auto\", got {value}"));
    match value {
        serde_json::Value::String(s) if s == "auto" => {
            Ok(std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_WORKERS))
        }
        serde_json::Value::Number(n) => match n.as_u64() {
            Some(n @ 1..) if n <= MAX_WORKERS as u64 => Ok(n as usize),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// `client_ip`, `path`, `header:NAME` or `cookie:NAME`.
fn parse_hash_key(text: &str) -> Result<HashKey, ConfigError> {
    match text.split_once(':') {
        None if text == "client_ip" => Ok(HashKey::ClientIp),
        None if text == "path" => Ok(HashKey::Path),
        Some(("header", name)) if http::is_token(name) => Ok(HashKey::Header(name.to_ascii_lowercase())),
        Some(("cookie", name)) if http::is_token(name) => Ok(HashKey::Cookie(name.to_owned())),
        _ => Err(err(
            "hash_key",
            format!("must be \"client_ip\", \"path\", \"header:NAME\" or \"cookie:NAME\", got {text:?}"),
        )),
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
        weight: 1,
        discover: false,
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
        assert_eq!(c.health.sleeping, Duration::from_secs(1));
        assert_eq!(c.listen, "0.0.0.0:8000".parse().expect("addr"));
        assert_eq!(c.health.probe_path, "/ping/");
        assert_eq!(c.balancing.all_down_status, 500);
        assert_eq!(c.targets[0].literal_addr(), Some("127.0.0.1:9001".parse().expect("addr")));
        assert_eq!(c.targets[1].literal_addr(), None);
        assert_eq!(
            (c.health.fall, c.health.rise, c.balancing.retries, c.balancing.all_down),
            (1, 1, None, AllDown::Error)
        );
        assert_eq!(c.logging.access_log, LogDestination::Off);
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
    fn an_unknown_key_names_the_nearest_known_one() {
        let typo = refused(r#"{"ports": ["http://a/"], "sleping": 1}"#);
        assert!(typo.contains("unknown field `sleping` (did you mean `sleeping`?)"), "{typo}");
        let swapped = refused(r#"{"ports": ["http://a/"], "upstream_timoeut": 1}"#);
        assert!(swapped.contains("(did you mean `upstream_timeout`?)"), "{swapped}");
        assert!(!refused(r#"{"ports": ["http://a/"], "colour": 1}"#).contains("did you mean"), "nothing near");
        let nested = refused(r#"{"ports": [{"url": "http://a/", "wieght": 2}]}"#);
        assert!(nested.contains("(did you mean `weight`?)"), "{nested}");
        let tls = refused(r#"{"ports": ["http://a/"], "tls": {"cert": "c", "key": "k", "lisen": ":1"}}"#);
        assert!(tls.contains("(did you mean `listen`?)"), "{tls}");
        let sni = refused(r#"{"ports": ["http://a/"], "tls": {"cert": "c", "key": "k", "sni": [{"name": ["a"]}]}}"#);
        assert!(sni.contains("(did you mean `names`?)"), "{sni}");
    }

    #[test]
    fn errors_speak_the_files_words() {
        assert!(refused(r#"{"port": ["http://a/"]}"#).contains("is `port` meant to be `ports`?"));
        assert!(refused(r#"{"ports": [{"uri": "http://a/"}]}"#)
            .contains("entry 1: unknown field `uri` (did you mean `url`?)"));
        assert!(refused(r#"{"ports": ["http://a/"], "policy": "leastconn"}"#).contains("(did you mean `least_conn`?)"));
        assert!(refused(r#"{"ports": ["http://a/"], "access_log_format": "jsn"}"#).contains("\"clf\""));
        assert!(refused(r#"{"ports": ["http://a/"], "sleeping": 86401}"#).contains("at most 86400"));
        let negative = refused(r#"{"ports": ["http://a/"], "max_connections": -1}"#);
        assert!(negative.contains("a whole number") && !negative.contains("usize"), "{negative}");
        assert!(
            refused(r#"{"ports": ["http://a/"], "tls": {"cert": "", "key": "k"}}"#).contains("`tls.cert`: is empty")
        );
    }

    #[test]
    fn whole_numbers_written_with_a_point_are_whole_numbers() {
        let c =
            Config::parse(r#"{"ports": [{"url": "http://a/", "weight": 3.0}], "workers": 2.0, "max_body_size": 1e3}"#)
                .expect("valid, as the schema says");
        assert_eq!((c.targets[0].weight, c.workers, c.limits.max_body_size), (3, 2, Some(1000)));
        assert!(refused(r#"{"ports": ["http://a/"], "fall": 1.5}"#).contains("`fall`"));
        let c = Config::parse(r#"{"ports": ["http://a/"], "sleeping": 2.0}"#).expect("seconds stay seconds");
        assert_eq!(c.health.sleeping, Duration::from_secs(2));
    }

    #[test]
    fn the_parser_lists_its_keys_and_ignores_a_schema_address() {
        let keys = keys();
        assert_eq!(keys.len(), 37, "{keys:?}");
        assert_eq!((keys[0], keys[1]), ("$schema", "ports"));
        assert!(Config::parse(r#"{"$schema": "../docs/ringproxy.schema.json", "ports": ["http://a/"]}"#).is_ok());
        assert!(refused(r#"{"$schema": 1, "ports": ["http://a/"]}"#).contains("`$schema`"));
    }

    #[test]
    fn by_default_a_request_that_timed_out_has_time_for_one_retry() {
        let c = Config::parse(r#"{"ports": ["http://a/"]}"#).expect("valid");
        assert!(c.timeouts.retry > c.timeouts.upstream + c.timeouts.connect, "{:?}", c.timeouts.retry);
    }

    #[test]
    fn floors_duplicates_and_type_errors() {
        let c = Config::parse(r#"{"ports": ["http://a/"], "sleeping": 1e-9, "probe_timeout": 0}"#);
        assert!(c.is_err(), "zero is refused, not raised");
        let c = Config::parse(r#"{"ports": ["http://a/"], "sleeping": 1e-9}"#).expect("valid");
        assert_eq!((c.health.sleeping, c.warnings.len()), (Duration::from_millis(100), 1));
        assert!(refused(r#"{"ports": ["http://A:80/", "http://a/"]}"#).contains("same target"));
        assert!(refused(r#"{"ports": ["http://a/"], "max_connections": 0}"#).contains("`max_connections`"));
        assert!(refused(r#"{"ports": ["http://a/"], "check_live": "yes"}"#).contains("`check_live`"));
        assert!(Config::parse("\u{feff}{\"ports\": [\"http://a/\"]}").is_ok());
        assert!(refused(r#"{"ports": ["http://a/"], "max_chunk_line": 100000}"#).contains("`max_chunk_line`"));
    }

    #[test]
    fn listen_shorthand() {
        assert_eq!(parse_listen(":8080"), Some("0.0.0.0:8080".parse().expect("addr")));
        assert_eq!(parse_listen("127.0.0.1:0"), Some("127.0.0.1:0".parse().expect("addr")));
        assert_eq!(parse_listen("localhost:8000"), Some("127.0.0.1:8000".parse().expect("addr")));
        assert_eq!(parse_listen("LocalHost:0"), Some("127.0.0.1:0".parse().expect("addr")));
        assert_eq!(parse_listen("8080"), None);
        assert_eq!(parse_listen("example.com:80"), None);
    }

    #[test]
    fn targets_may_be_objects_with_a_weight_and_discovery() {
        let c = Config::parse(
            r#"{"ports": ["http://a/", {"url": "http://b:81/", "weight": 3}, {"url": "http://app:8080/", "discover": true}],
                "policy": "round_robin", "slow_start": 10, "hash_key": "header:X-User"}"#,
        )
        .expect("valid");
        let w: Vec<(u32, bool)> = c.targets.iter().map(|t| (t.weight, t.discover)).collect();
        assert_eq!(w, vec![(1, false), (3, false), (1, true)]);
        assert_eq!((c.balancing.policy, c.balancing.slow_start), (Policy::RoundRobin, Duration::from_secs(10)));
        assert_eq!(c.balancing.hash_key, HashKey::Header("x-user".into()));
        assert_eq!(c.health.resolve_interval, Duration::from_secs(5));
        for bad in [
            r#"{"ports": [{"url": "http://a/", "weight": 0}]}"#,
            r#"{"ports": [{"url": "http://a/", "wieght": 2}]}"#,
            r#"{"ports": [{"weight": 2}]}"#,
            r#"{"ports": [{"url": "http://127.0.0.1/", "discover": true}]}"#,
        ] {
            assert!(refused(bad).contains("`ports`"), "{bad}");
        }
        assert!(refused(r#"{"ports": ["http://a/"], "policy": "random"}"#).contains("`policy`"));
        assert!(refused(r#"{"ports": ["http://a/"], "hash_key": "header:"}"#).contains("`hash_key`"));
    }

    #[test]
    fn the_admin_listener_defaults_to_loopback_and_null_turns_it_off() {
        let c = Config::parse(r#"{"ports": ["http://a/"]}"#).expect("valid");
        assert_eq!(c.admin.addr, Some("127.0.0.1:9000".parse().expect("addr")));
        let c = Config::parse(r#"{"ports": ["http://a/"], "admin": null}"#).expect("valid");
        assert_eq!(c.admin.addr, None);
        let c = Config::parse(r#"{"ports": ["http://a/"], "admin": ":9100"}"#).expect("valid");
        assert_eq!(c.admin.addr, Some("0.0.0.0:9100".parse().expect("addr")));
        assert!(refused(r#"{"ports": ["http://a/"], "admin": "x"}"#).contains("`admin`"));
        assert!(refused(r#"{"ports": ["http://a/"], "access_log_format": "xml"}"#).contains("`access_log_format`"));
    }

    #[test]
    fn workers_are_a_count_or_auto() {
        assert_eq!(Config::parse(r#"{"ports": ["http://a/"]}"#).expect("valid").workers, 1);
        assert_eq!(Config::parse(r#"{"ports": ["http://a/"], "workers": 2}"#).expect("valid").workers, 2);
        let auto = Config::parse(r#"{"ports": ["http://a/"], "workers": "auto"}"#).expect("valid").workers;
        assert!((1..=MAX_WORKERS).contains(&auto));
        for bad in ["0", "-1", "65", "1.5", "\"many\"", "null"] {
            assert!(
                refused(&format!(r#"{{"ports": ["http://a/"], "workers": {bad}}}"#)).contains("`workers`"),
                "{bad}"
            );
        }
    }
}
