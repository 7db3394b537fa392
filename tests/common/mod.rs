//! Test harness: starts the real `ringproxy` and `target-svc` binaries on 127.0.0.1 ephemeral
//! ports and talks HTTP/1.1 to them over real sockets. Readiness is awaited by polling with a
//! deadline, never by a bare sleep. Every process is killed when its handle drops.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn proxy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ringproxy"))
}

/// target-svc is built beside ringproxy by `cargo test --workspace`.
pub fn target_bin() -> PathBuf {
    let path = proxy_bin().with_file_name("target-svc");
    assert!(path.exists(), "{} is missing: run the tests with `cargo test --workspace`", path.display());
    path
}

/// CI=true: tests that would skip for a missing tool (Docker, chromium, a Python package) fail
/// instead.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether something a test needs is here (a tool, a Python package, a permission). Without it
/// the test is skipped with a notice naming `how` to get it, or fails under CI=true.
pub fn needs(present: bool, what: &str, how: &str) -> bool {
    if !present {
        assert!(!in_ci(), "CI needs {what} ({how})");
        eprintln!("NOTICE: {what} is missing ({how}); skipped");
    }
    present
}

/// Whether Python can import `module`; see `needs`.
pub fn needs_python(module: &str) -> bool {
    let found = Command::new("python3").args(["-c", &format!("import {module}")]).status().is_ok_and(|s| s.success());
    needs(found, &format!("the Python package {module}"), &format!("python3 -m pip install {module}"))
}

/// The config schema, `docs/ringproxy.schema.json`.
pub fn schema_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/ringproxy.schema.json")
}

/// A Python process that validates configs against the schema with `jsonschema`, one JSON
/// document a line in, `ok` or the errors a line out; started once per test binary.
struct Validator {
    input: std::process::ChildStdin,
    output: BufReader<std::process::ChildStdout>,
    _child: Child,
}

const VALIDATE: &str = r#"
import json, sys
from jsonschema import Draft202012Validator
validator = Draft202012Validator(json.load(open(sys.argv[1])))
for line in sys.stdin:
    errors = ["%s: %s" % ("/".join(map(str, e.absolute_path)) or "(top)", e.message)
              for e in validator.iter_errors(json.loads(line))]
    print("ok" if not errors else "; ".join(errors), flush=True)
"#;

/// Whether `json` (a config) is valid under the schema: `Err` with what the validator said.
/// Without Python's `jsonschema` it passes with a notice, except under CI=true where it fails.
pub fn schema_check(json: &str) -> Result<(), String> {
    static VALIDATOR: std::sync::OnceLock<Option<Mutex<Validator>>> = std::sync::OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        if !needs_python("jsonschema") {
            return None;
        }
        let mut child = Command::new("python3")
            .args(["-c", VALIDATE])
            .arg(schema_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the schema validator");
        let input = child.stdin.take().expect("stdin");
        let output = BufReader::new(child.stdout.take().expect("stdout"));
        Some(Mutex::new(Validator { input, output, _child: child }))
    });
    let Some(validator) = validator else {
        return Ok(());
    };
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let mut v = validator.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    writeln!(v.input, "{value}").map_err(|e| format!("to the validator: {e}"))?;
    let mut answer = String::new();
    v.output.read_line(&mut answer).map_err(|e| format!("from the validator: {e}"))?;
    match answer.trim() {
        "ok" => Ok(()),
        errors => Err(errors.to_owned()),
    }
}

/// Polls `check` until it gives a value or `within` passes.
pub fn eventually<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child process whose output lines are collected as they come.
pub struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a test binary");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        for stream in [out, err] {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().expect("lines").push(line);
                }
            });
        }
        Proc { child, lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// The first output line containing `needle`, waiting up to `within` for it.
    pub fn wait_line(&self, needle: &str, within: Duration) -> String {
        eventually(within, &format!("a line with {needle:?}"), || self.lines().into_iter().find(|l| l.contains(needle)))
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.pid().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} failed");
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        eventually(within, "the process to exit", || self.child.try_wait().ok().flatten()).code()
    }

    /// The exit code if the process has exited by now, without waiting.
    pub fn wait_exit_or_none(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().ok().flatten().map(|status| status.code())
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of `series` (a name and its labels as rendered) in exposition text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))?;
    line.rsplit(' ').next()?.parse().ok()
}

/// The value of `series` in the `/metrics` of the admin listener at `admin`; panics if none.
pub fn metric_at(admin: SocketAddr, series: &str) -> f64 {
    let text = Client::connect(admin).request("GET", "/metrics", &[], b"").text();
    sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// CPU seconds process `pid` has used, user and system (`/proc/PID/stat`).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    // utime and stime, in clock ticks: fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The address in a "listening on ADDR" line.
pub fn listening_addr(line: &str) -> SocketAddr {
    let addr = line.split("listening on ").nth(1).expect("address").split([';', ' ']).next().expect("address");
    addr.parse().expect("a socket address")
}

pub struct Target {
    pub name: String,
    pub host: String,
    pub port: u16,
    proc: Option<Proc>,
}

/// target-svc on `host`:`port` (0 for any free port).
fn spawn_target_on(name: &str, host: &str, port: u16, extra: &[&str]) -> Proc {
    let port = port.to_string();
    Proc::spawn(Command::new(target_bin()).args(["--host", host, "--port", &port, "--name", name]).args(extra))
}

impl Target {
    pub fn start(name: &str) -> Target {
        Target::on_port(name, 0)
    }

    fn on_port(name: &str, port: u16) -> Target {
        Target::on(name, "127.0.0.1", port, &[])
    }

    /// target-svc on `host`:`port` (a loopback address), with more arguments (`--delay-ms`).
    pub fn on(name: &str, host: &str, port: u16, extra: &[&str]) -> Target {
        let proc = spawn_target_on(name, host, port, extra);
        let port = listening_addr(&proc.wait_line("listening on", Duration::from_secs(10))).port();
        Target { name: name.to_string(), host: host.to_string(), port, proc: Some(proc) }
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}/", self.host, self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(10);
        // The old socket may linger for a moment; retry the bind until it is free.
        loop {
            let proc = spawn_target_on(&self.name, &self.host, port, &[]);
            let started = eventually(Duration::from_secs(5), "target start or failure", || {
                let lines = proc.lines();
                if lines.iter().any(|l| l.contains("listening on")) {
                    Some(true)
                } else if lines.iter().any(|l| l.contains("cannot listen")) {
                    Some(false)
                } else {
                    None
                }
            });
            if started {
                self.proc = Some(proc);
                return;
            }
            assert!(Instant::now() < deadline, "port {port} stayed busy");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.proc.as_ref().map(Proc::lines).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, Proc::pid)
    }
}

pub fn targets(n: usize) -> Vec<Target> {
    (1..=n).map(|i| Target::start(&format!("t{i}"))).collect()
}

static CONFIGS: AtomicUsize = AtomicUsize::new(0);

/// A config naming `targets`, listening on an ephemeral loopback port, with `extra` keys.
pub fn config_json(targets: &[Target], extra: &str) -> String {
    let ports: Vec<String> = targets.iter().map(|t| format!("\"{}\"", t.url())).collect();
    format!(
        "{{\"ports\": [{}], \"listen\": \"127.0.0.1:0\"{}{}}}",
        ports.join(", "),
        if extra.is_empty() { "" } else { ", " },
        extra
    )
}

pub struct Proxy {
    pub addr: SocketAddr,
    /// The admin endpoints, unless the config turned them off.
    pub admin: Option<SocketAddr>,
    pub proc: Proc,
    pub config: PathBuf,
}

impl Proxy {
    /// Starts ringproxy in front of `targets`; `extra` is more JSON keys, e.g. `"sleeping": 1`.
    /// The admin endpoints listen on an ephemeral loopback port unless `extra` says otherwise.
    pub fn start(targets: &[Target], extra: &str) -> Proxy {
        Proxy::with_config(&config_json(targets, extra))
    }

    /// Starts ringproxy with this config; the admin listener goes to an ephemeral loopback port
    /// unless the config names `admin`, so that tests running side by side never collide.
    pub fn with_config(json: &str) -> Proxy {
        let json = match json.contains("\"admin\"") {
            true => json.to_owned(),
            false => json.replacen('{', "{\"admin\": \"127.0.0.1:0\", ", 1),
        };
        // Every config a test starts the proxy with is one the schema accepts.
        if let Err(e) = schema_check(&json) {
            panic!("the schema refuses a config the proxy is started with: {e}\n{json}");
        }
        let config = std::env::temp_dir().join(format!(
            "ringproxy-test-{}-{}.json",
            std::process::id(),
            CONFIGS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&config, &json).expect("write config");
        let proc = Proc::spawn(Command::new(proxy_bin()).arg("--config").arg(&config).args(["--log-level", "debug"]));
        let addr = listening_addr(&proc.wait_line("listening on", Duration::from_secs(10)));
        let admin_line = proc.wait_line("admin endpoints", Duration::from_secs(10));
        let admin = admin_line
            .split("admin endpoints on ")
            .nth(1)
            .map(|rest| rest.split(": ").next().and_then(|addr| addr.parse().ok()).expect("the admin address"));
        Proxy { addr, admin, proc, config }
    }

    /// Rewrites the config file (targets and extra keys as for `start`) and sends SIGHUP.
    pub fn reload(&self, json: &str) {
        std::fs::write(&self.config, json).expect("rewrite config");
        self.signal("HUP");
    }

    pub fn signal(&self, signal: &str) {
        self.proc.signal(signal);
    }

    /// A GET to the admin listener, on a fresh connection.
    pub fn admin_get(&self, path: &str) -> Response {
        Client::connect(self.admin.expect("the admin listener is on")).request("GET", path, &[], b"")
    }

    /// The value of the `/metrics` line for `series` (a name and its labels as rendered, e.g.
    /// `ringproxy_target_up{target="http://127.0.0.1:9001/"}`); panics if there is none.
    pub fn metric(&self, series: &str) -> f64 {
        metric_at(self.admin.expect("the admin listener is on"), series)
    }

    pub fn get(&self, path: &str) -> Response {
        Client::connect(self.addr).request("GET", path, &[], b"")
    }

    /// Resident set size of the proxy process, and its peak, in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proc.pid())).expect("proc status");
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn target(&self) -> &str {
        self.header("x-target").unwrap_or("")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive HTTP/1.1 client over one connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to the proxy");
        stream.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Client { stream, buf: Vec::new() }
    }

    /// A connection whose failure is a value, for load loops that count failures.
    pub fn try_connect(addr: SocketAddr) -> Result<Client, String> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect: {e}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(15))).map_err(|e| e.to_string())?;
        Ok(Client { stream, buf: Vec::new() })
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).expect("send");
    }

    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.try_request(method, path, headers, body).expect("a response")
    }

    /// A request whose failure is a value, for load loops that count failures.
    pub fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, String> {
        let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (name, value) in headers {
            raw.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        raw.push_str("\r\n");
        let mut bytes = raw.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.write_all(&bytes).map_err(|e| format!("send: {e}"))?;
        self.try_read_response(method == "HEAD")
    }

    fn fill(&mut self) -> Result<usize, String> {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    fn fill_some(&mut self, what: &str) -> Result<(), String> {
        match self.fill()? {
            0 => Err(format!("connection closed {what}")),
            _ => Ok(()),
        }
    }

    /// Reads one response, framed as RFC 9112 says; `head_request` for a response to HEAD.
    pub fn read_response(&mut self, head_request: bool) -> Response {
        self.try_read_response(head_request).expect("a response")
    }

    pub fn try_read_response(&mut self, head_request: bool) -> Result<Response, String> {
        let (status, headers, head_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut hs);
            let parsed = resp.parse(&self.buf).map_err(|e| format!("bad response head: {e}"))?;
            if let httparse::Status::Complete(n) = parsed {
                let headers = resp
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect::<Vec<_>>();
                break (resp.code.unwrap_or(0), headers, n);
            }
            self.fill_some("before a response head")?;
        };
        self.buf.drain(..head_len);
        let mut response = Response { status, headers, body: Vec::new() };
        let no_body = head_request || status < 200 || status == 204 || status == 304;
        if no_body {
            return Ok(response);
        }
        if response.header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            response.body = self.read_chunked()?;
        } else if let Some(len) = response.header("content-length") {
            let len: usize = len.trim().parse().map_err(|_| "bad Content-Length".to_string())?;
            while self.buf.len() < len {
                self.fill_some("inside a body")?;
            }
            response.body = self.buf.drain(..len).collect();
        } else {
            while self.fill()? > 0 {}
            response.body = std::mem::take(&mut self.buf);
        }
        Ok(response)
    }

    /// The next CRLF-ended line, without its CRLF.
    fn line(&mut self) -> Result<Vec<u8>, String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            self.fill_some("inside chunk framing")?;
        }
    }

    fn read_chunked(&mut self) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let size_line = String::from_utf8_lossy(&self.line()?).into_owned();
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_line:?}"))?;
            if size == 0 {
                while !self.line()?.is_empty() {}
                return Ok(body);
            }
            while self.buf.len() < size + 2 {
                self.fill_some("inside a chunk")?;
            }
            body.extend(self.buf.drain(..size));
            if self.buf.drain(..2).as_slice() != b"\r\n" {
                return Err("chunk data not followed by CRLF".into());
            }
        }
    }

    /// Whether the server closed the connection (EOF with nothing more to read).
    pub fn is_closed(&mut self) -> bool {
        self.buf.is_empty() && matches!(self.stream.read(&mut [0u8; 1]), Ok(0) | Err(_))
    }
}

/// The bytes target-svc sends for `/bytes/N`.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % (64 * 1024) % 26) as u8).collect()
}

/// Counts of responses per target name.
pub fn tally<'a>(responses: impl IntoIterator<Item = &'a Response>) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for r in responses {
        *counts.entry(r.target().to_string()).or_insert(0) += 1;
    }
    counts
}

/// An upstream of the test's own on loopback, for behaviour target-svc never shows: every
/// accepted connection is handed to `handler` on its own thread.
pub fn serve_raw<F>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) + Clone + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let handler = handler.clone();
            std::thread::spawn(move || handler(conn));
        }
    });
    addr
}

/// Reads up to the end of a request head (bodies are not expected); `false` on EOF.
pub fn read_head(conn: &mut TcpStream) -> bool {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            _ => return false,
        }
    }
    true
}

/// Answers every connection's first request with `reply`, then closes.
pub fn raw_upstream(reply: &'static [u8]) -> SocketAddr {
    serve_raw(move |mut conn| {
        if read_head(&mut conn) {
            let _ = conn.write_all(reply);
        }
    })
}

/// A listener whose accept queue is full, so a connect to it hangs: the "never answers"
/// target for connect timeouts. It lives as long as the returned value.
pub struct FullBacklog {
    pub addr: SocketAddr,
    _listener: std::net::TcpListener,
    _queued: Vec<TcpStream>,
}

impl FullBacklog {
    pub fn new() -> FullBacklog {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut queued = Vec::new();
        // Connect until one hangs: then the queue is full. Bounded by the attempts.
        for _ in 0..5000 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => queued.push(s),
                Err(_) => return FullBacklog { addr, _listener: listener, _queued: queued },
            }
        }
        panic!("the accept queue of {addr} never filled");
    }
}

/// A fresh path for a test's access log.
pub fn temp_log(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "ringproxy-{name}-{}-{}.log",
        std::process::id(),
        CONFIGS.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&path);
    path
}

pub fn read_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// What a `Recorder` target does after it has answered a request.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Close the connection without reading anything more (an early answer).
    Close,
    /// Keep reading and recording bytes until the proxy closes, answering nothing more.
    Listen,
}

/// A target of the test's own that records every request head it reads at the start of a
/// connection and every byte after it, answers `reply` at once without reading any body, then
/// does as `then` says.
pub struct Recorder {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    after: Arc<Mutex<Vec<u8>>>,
    ended: Arc<AtomicUsize>,
}

impl Recorder {
    pub fn start(reply: &'static [u8], then: Then) -> Recorder {
        let heads = Arc::new(Mutex::new(Vec::new()));
        let after = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(AtomicUsize::new(0));
        let (h, a, e) = (Arc::clone(&heads), Arc::clone(&after), Arc::clone(&ended));
        let addr = serve_raw(move |conn| {
            serve_recorded(conn, reply, then, &h, &a);
            e.fetch_add(1, Ordering::SeqCst);
        });
        Recorder { addr, heads, after, ended }
    }

    /// Connections the proxy (or the recorder) has closed so far.
    pub fn ended(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }

    /// The request heads received, one per connection.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("heads").clone()
    }

    /// The request lines received.
    pub fn request_lines(&self) -> Vec<String> {
        self.heads().iter().map(|h| h.lines().next().unwrap_or("").to_string()).collect()
    }

    /// Bytes received after the heads (with `Then::Listen`).
    pub fn after(&self) -> Vec<u8> {
        self.after.lock().expect("after").clone()
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

/// One connection of a `Recorder`.
fn serve_recorded(mut conn: TcpStream, reply: &[u8], then: Then, heads: &Mutex<Vec<String>>, after: &Mutex<Vec<u8>>) {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            _ => return,
        }
    }
    heads.lock().expect("heads").push(String::from_utf8_lossy(&got).into_owned());
    if conn.write_all(reply).is_err() || then == Then::Close {
        return;
    }
    let mut chunk = [0u8; 65536];
    while let Ok(n) = conn.read(&mut chunk) {
        if n == 0 {
            return;
        }
        after.lock().expect("after").extend_from_slice(&chunk[..n]);
    }
}

/// Sends `bytes` on a clone of `stream` from a thread of its own, so that the test can read
/// responses while a large upload is still going out. Write errors end it quietly: the proxy may
/// close once it has answered.
pub fn send_in_background(stream: &TcpStream, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
    let mut out = stream.try_clone().expect("clone the client socket");
    std::thread::spawn(move || {
        let _ = out.write_all(&bytes);
    })
}

/// A port on 127.0.0.1 where nothing listens: connections to it are refused.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}
